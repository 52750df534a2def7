"""Model-specific knowledge: which functions and locals hold attention, and how to label them.

>>> from getlocal.adapters import openvla        # or paligemma
>>> openvla.activate()                            # doctest: +SKIP
>>> maps = openvla.collect()                      # doctest: +SKIP
>>> with openvla.capture(model) as maps:          # doctest: +SKIP
...     action = model.predict_action(**inputs)   # maps is filled when the block ends

``openvla``: OpenVLA / Prismatic (timm DINOv2 + SigLIP, Llama-2). ``paligemma``:
PaliGemma and Pi0 / Pi0.5 (SigLIP, Gemma, an action expert). ``tiny``: small
random-init models of both shapes, for tests and the demo. Each adapter imports
timm / transformers only when activated.

Inside, an adapter module is a ``Spec`` (data: towers, attention sources,
layouts) given to ``_lifecycle.register``; ``_libraries`` holds the timm and
transformers sources, ``_labels`` turns captured calls into ``AttentionMaps``,
``_undo`` logs every switch so that ``deactivate`` can take it back.
"""
