"""Tables, TensorBoard HParams and figures from a sweep directory: `python -m analysis DIR`."""
