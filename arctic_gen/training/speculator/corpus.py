"""Prompt sources for speculator data: a built-in offline corpus, or a user's JSONL/Parquet dataset.

The built-in corpus needs nothing but the Python interpreter: it is built from the standard library's own sources
on the machine that runs it (functions → code-editing and explanation requests; module/class docstrings →
summaries and explanations) plus general chat requests from topic × template lists written below. It is
deterministic for a given Python version. A held-out split (1 in `HELD_OUT_EVERY` by a stable hash of the text)
never appears in training data.

User datasets: one record per line (JSONL) or row (Parquet) with `messages` / `conversations` (a list of
{"role", "content"} or ShareGPT {"from", "value"}), or `prompt` / `instruction` / `text` (a string, used as one
user message; long texts are cut into chunks of at most `max_prompt_tokens` tokens by `chat_prompts`).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import random
import sysconfig
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

Message = dict[str, str]
Conversation = list[Message]

HELD_OUT_EVERY = 16

_STDLIB_MODULES = (
    "argparse", "ast", "base64", "bisect", "calendar", "cmd", "codecs", "collections/__init__", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "dis", "email/utils",
    "enum", "filecmp", "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob",
    "gzip", "hashlib", "heapq", "hmac", "html/parser", "http/client", "http/cookies", "imaplib", "inspect",
    "ipaddress", "json/decoder", "json/encoder", "logging/__init__", "logging/handlers", "mailbox", "mimetypes",
    "netrc", "ntpath", "numbers", "operator", "optparse", "pathlib", "pickle", "pickletools", "platform",
    "plistlib", "poplib", "posixpath", "pprint", "pstats", "queue", "quopri", "random", "re/_parser", "reprlib",
    "sched", "secrets", "selectors", "shlex", "shutil", "smtplib", "socket", "socketserver", "statistics",
    "string", "subprocess", "tabnanny", "tarfile", "tempfile", "textwrap", "threading", "timeit", "token",
    "tokenize", "trace", "traceback", "turtle", "typing", "unittest/case", "urllib/parse", "urllib/request",
    "uuid", "warnings", "wave", "weakref", "webbrowser", "xml/dom/minidom", "zipfile", "zipimport",
)

_CODE_TASKS = (
    "Rewrite this code renaming the variable `{var}` to `{new}`. Keep everything else the same.",
    "Rename `{var}` to `{new}` in the following function and show the full result.",
    "Explain what this Python function does, step by step.",
    "Add type hints to this function and return the complete code.",
    "Write a clear docstring for this function.",
    "Are there any bugs or edge cases in this code? Explain briefly.",
    "Write two pytest unit tests for this function.",
    "Refactor this function to make it easier to read, without changing its behaviour.",
    "Translate this Python function to JavaScript.",
    "Summarize this function in one sentence, then list its parameters.",
)
_DOC_TASKS = (
    "Summarize the following documentation in a few sentences:",
    "Explain the following to a beginner programmer:",
    "Write a short usage example based on this description:",
    "What are the main points of this text? Answer with a bulleted list.",
    "Rewrite this documentation in simpler words:",
)
_NEW_NAMES = ("value", "item", "result", "data", "count", "buffer", "node", "entry", "total", "text", "parts",
              "config", "index", "payload", "element")

_TOPICS = (
    "the importance of higher education", "climate change", "learning a second language", "remote work",
    "the history of the printing press", "healthy sleep habits", "open source software", "space exploration",
    "the water cycle", "renewable energy", "saving money as a student", "the benefits of reading", "volcanoes",
    "the Roman Empire", "how vaccines work", "machine learning", "public transport in cities", "photosynthesis",
    "the stock market", "writing a good resume", "time management", "the invention of the telephone",
    "honey bees", "the ocean's tides", "chess strategy", "growing tomatoes at home", "the human heart",
    "electric cars", "social media and teenagers", "the French Revolution", "black holes", "team sports",
    "cooking pasta", "how the internet works", "recycling plastic", "mountain hiking safety", "jazz music",
    "the solar system", "public speaking", "databases", "encryption", "the Great Wall of China", "earthquakes",
    "meditation", "the life of a star", "coffee", "birds migrating", "minimalism", "video game design",
    "the Olympic Games", "cloud computing", "antibiotics", "the moon landing", "composting", "rainforests",
    "learning to program", "job interviews", "the periodic table", "friendship", "urban gardening",
)
_CHAT_TASKS = (
    "Write a short essay about {topic}.",
    "Give me five practical tips about {topic}.",
    "Explain {topic} to a ten-year-old.",
    "What are the pros and cons of {topic}?",
    "Write a short story that involves {topic}.",
    "Summarize the key facts about {topic} in a bulleted list.",
    "Write a blog post introduction about {topic}.",
    "What are common misconceptions about {topic}?",
    "Write a short poem about {topic}.",
    "Create a quiz with three questions about {topic}, with answers.",
    "Write an email to a friend recommending they learn about {topic}.",
    "Compare {topic} with {other}.",
)


def is_held_out(text: str) -> bool:
    """Stable train/held-out split by content (1 in HELD_OUT_EVERY)."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:4], "little") % HELD_OUT_EVERY == 0


def _user(text: str) -> Conversation:
    return [{"role": "user", "content": text}]


def _local_names(node: ast.FunctionDef) -> list[str]:
    names = {a.arg for a in node.args.args + node.args.kwonlyargs if a.arg not in ("self", "cls")}
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store) and len(sub.id) > 1:
            names.add(sub.id)
    return sorted(names)


@functools.lru_cache(maxsize=1)
def _stdlib_items(max_lines: int = 40) -> list[tuple[str, str, Any]]:
    return list(_iter_stdlib_items(max_lines))


def _iter_stdlib_items(max_lines: int) -> Iterator[tuple[str, str, Any]]:
    """("code", source, function node) and ("doc", docstring, None) items from the stdlib sources."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for module in _STDLIB_MODULES:
        path = root / f"{module}.py"
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        lines = source.splitlines()
        doc = ast.get_docstring(tree)
        if doc and len(doc) > 120:
            yield "doc", doc[:1500], None
        top = list(tree.body)
        nodes = top + [n for c in top if isinstance(c, ast.ClassDef) for n in c.body]  # functions and methods
        for node in nodes:
            if isinstance(node, ast.ClassDef):
                cdoc = ast.get_docstring(node)
                if cdoc and len(cdoc) > 120:
                    yield "doc", f"{node.name}: {cdoc[:1200]}", None
            elif isinstance(node, ast.FunctionDef) and node.end_lineno is not None:
                n_lines = node.end_lineno - node.lineno + 1
                if 4 <= n_lines <= max_lines:
                    segment = textwrap.dedent("\n".join(lines[node.lineno - 1:node.end_lineno]))
                    yield "code", segment, node


def builtin_conversations(split: str = "train", seed: int = 0) -> list[Conversation]:
    """The offline corpus (see the module docstring); split is "train" or "held_out"."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    rng = random.Random(seed)
    texts: list[str] = []
    for kind, text, node in _stdlib_items():
        if kind == "code":
            task = rng.choice(_CODE_TASKS)
            if "{var}" in task:
                names = _local_names(node)
                if not names:
                    task = _CODE_TASKS[2]
                else:
                    var = rng.choice(names)
                    new = rng.choice([n for n in _NEW_NAMES if n not in names] or ["renamed"])
                    task = task.format(var=var, new=new)
            texts.append(f"{task}\n\n```python\n{text}\n```")
        else:
            texts.append(f"{rng.choice(_DOC_TASKS)}\n\n{text}")
    for topic in _TOPICS:
        for task in _CHAT_TASKS:
            texts.append(task.format(topic=topic, other=rng.choice([t for t in _TOPICS if t != topic])))
    want_held_out = split == "held_out"
    chosen = [t for t in texts if is_held_out(t) == want_held_out]
    rng.shuffle(chosen)
    return [_user(t) for t in chosen]


def _record_conversation(record: Any, where: str) -> Conversation:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected an object, got {type(record).__name__}")
    turns = record.get("messages", record.get("conversations"))
    if turns is not None:
        conversation = []
        for turn in list(turns):
            role = turn.get("role", turn.get("from"))
            content = turn.get("content", turn.get("value"))
            role = {"human": "user", "gpt": "assistant", "model": "assistant"}.get(role, role)
            if role not in ("system", "user", "assistant") or not isinstance(content, str):
                raise ValueError(f"{where}: bad turn {turn!r}")
            conversation.append({"role": role, "content": content})
        return conversation
    for key in ("prompt", "instruction", "text"):
        if isinstance(record.get(key), str):
            return _user(record[key])
    raise ValueError(f"{where}: needs 'messages', 'conversations', 'prompt', 'instruction' or 'text'")


def _records(path: Path) -> Iterable[Any]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("reading Parquet needs pyarrow (pip install pyarrow)") from None
        yield from pq.read_table(path).to_pylist()
        return
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not JSON ({exc})") from None


def file_conversations(path: str | Path) -> list[Conversation]:
    """Conversations of a JSONL or Parquet file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt dataset {str(path)!r} does not exist")
    return [_record_conversation(r, f"{path} record {i}") for i, r in enumerate(_records(path))]


def chat_prompts(tokenizer: Any, conversations: Iterable[Conversation], max_prompt_tokens: int) -> list[list[int]]:
    """Chat-templated prompt token ids: one prompt per user turn (the conversation up to it, with the generation
    prompt), long user texts cut into chunks of at most `max_prompt_tokens` tokens, the context kept from the
    right end when the templated prompt is still too long."""
    prompts: list[list[int]] = []
    budget = max(16, max_prompt_tokens - 32)  # room for the template around a chunk
    for conversation in conversations:
        for turn, message in enumerate(conversation):
            if message["role"] != "user":
                continue
            ids = tokenizer.encode(message["content"], add_special_tokens=False)
            chunks = [ids[i:i + budget] for i in range(0, max(len(ids), 1), budget)]
            for chunk in chunks:
                content = tokenizer.decode(chunk) if len(chunks) > 1 else message["content"]
                templated = tokenizer.apply_chat_template(
                    conversation[:turn] + [{"role": "user", "content": content}], add_generation_prompt=True,
                    tokenize=True)
                if hasattr(templated, "keys"):  # transformers >= 5 may return a BatchEncoding
                    templated = templated["input_ids"]
                prompts.append(list(templated)[-max_prompt_tokens:])
    return prompts
