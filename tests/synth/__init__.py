"""Tests of cervrt.synth."""
