"""Speculator training pipeline: `data` (vLLM generation from the base model), `train`, `export`, `eval`.

Entry point: `arctic_gen.training.speculator.cli:main(argv)` (`arctic-gen train-speculator ...`). Needs the
`[train]` extra (transformers, tqdm); the vLLM plugin never imports this package.
"""
