"""Text-encoder pretraining and its judges: char-CNN-RNN + image encoder, retrieval metrics."""
