"""Menwei (门卫): the `menwei` command line, the demo and the benchmarks (composition root)."""
