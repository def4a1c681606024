"""Test-only plugin modules, loaded by the trainer through the config key `imports: [plugins.<module>]`.

The tests put `tests/` on PYTHONPATH for the launched processes. Each module registers (or patches)
something that a forker could write, to drive the distributed checks into their failure paths.
"""
