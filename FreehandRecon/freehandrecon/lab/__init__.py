"""Research tools kept apart from the product: nothing in the module, the CLI workflow or training imports them.

:mod:`.independent_sim` builds a validation set with an independent physics simulator (pymust, optional
extra ``lab``) and checks its poses against its phantom.
"""
