"""Quality judging of a GAN checkpoint or bundle: metrics, the attribute oracle, reports."""
