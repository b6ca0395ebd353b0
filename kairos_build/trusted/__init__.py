"""Trusted Boot: keys, unified kernel images, verity roots."""
