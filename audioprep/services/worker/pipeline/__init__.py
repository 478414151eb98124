"""Pure media steps run by workers in a process pool: probe, analyse, render."""
