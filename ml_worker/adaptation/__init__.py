"""Adaptation of the models to a site: PEFT methods, partial-label loss, training loop, validation gate."""
