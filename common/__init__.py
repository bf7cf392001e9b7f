"""Code that the gateway and the classifier share: the message contract, settings, queue topology.

Nothing in this package imports onnxruntime, TensorFlow, torch or aiohttp.
"""
