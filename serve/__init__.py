"""Serving and export: an OpenAI-compatible server with a browser chat and battle mode; GGUF/HF export.

    lifecycle serve runs/tiny/sft runs/tiny/rl        # http://127.0.0.1:8000/  (docs/serving.md)
    lifecycle export runs/tiny/rl --format gguf --out tiny-rl.gguf
"""
