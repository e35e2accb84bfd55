"""``python -m bench``: the product worker against a naive baseline, a rate-limited fleet test and
a memory test, all on real RabbitMQ/Redis and the API simulator. See docs/benchmark.md."""
