"""Loss terms of the tokenizer step: reconstruction, perceptual, adversarial (with the
discriminator update), alignment."""
