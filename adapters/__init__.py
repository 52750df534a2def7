"""Model-specific knowledge: which functions and locals hold attention, and how to label them.

>>> from getlocal.adapters import openvla        # or paligemma
>>> openvla.activate()                            # doctest: +SKIP
>>> maps = openvla.collect()                      # doctest: +SKIP

``openvla``: OpenVLA / Prismatic (timm DINOv2 + SigLIP, Llama-2). ``paligemma``:
PaliGemma and Pi0 / Pi0.5 (SigLIP, Gemma, an action expert). ``tiny``: small
random-init models of both shapes, for tests and the demo. Each adapter imports
timm / transformers only when activated.
"""
