"""The language-model application: vocabulary, corpus, model, trainer, checkpoints and the command line."""
