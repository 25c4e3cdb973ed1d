"""Text the engine learns from and evaluates on: the built-in corpora (builtin.py: the docstring
and prose corpora and their mix), and token sequences for training and fidelity (sequences.py;
`world`'s generated corpus in world.py)."""
