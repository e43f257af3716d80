"""Research tools kept apart from the product: simulation commands, training, evaluation, benchmarks, plots,
and :mod:`.independent_sim`, a validation set from an independent physics simulator (pymust, optional extra
``lab``) that nothing in training or model selection reads.
"""
