"""The tiny embedded-CLAP configuration shared by the CLAP and evaluation tests."""

# vocab_size matches the bundled MiniLM tokenizer, which the tiny text encoder reuses.
TINY_BERT = {
    "vocab_size": 30522,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 64,
}
TINY_CLAP = {
    "text_config": TINY_BERT,
    "cnn_channels": [4, 8],
    "cnn_strides": [[4, 2], [4, 2]],
    "audio_width": 16,
    "embed_dim": 8,
    "window_seconds": 0.5,
    "max_text_tokens": 32,
}
