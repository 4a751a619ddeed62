"""The benchmark suite's conftest. The pqbench plugin is loaded by its pytest11 entry point;
register your own models, datasets or pruners here (see docs/how-to/register-your-model.md)."""
