"""Hydra configs shipped as package data (`pkg://diffquant.conf`); the checkout links them as conf/."""
