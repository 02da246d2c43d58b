"""rescue-t2i training: data, text-encoder pretraining, GAN-INT-CLS training, evaluation."""
