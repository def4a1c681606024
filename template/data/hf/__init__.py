"""Hugging Face `datasets` sources: `hf` (table.py) and `hf_stream` (stream.py), sharing common.py."""
