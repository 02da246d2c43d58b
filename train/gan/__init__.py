"""GAN training: flags and config, the step, the run loop, losses, cached text embeddings."""
