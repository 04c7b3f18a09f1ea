"""Model files of the plugin, laid out like vLLM model files: Arctic speculators (MLP, LSTM) and SwiftKV."""
