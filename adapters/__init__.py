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

Every adapter's ``activate`` and ``capture`` take the same mode and selection:

* ``mode='eager'`` (default: the model is switched to eager attention and the
  maps are captured as computed) or ``'fast'`` (the model keeps its kernel; the
  maps are rebuilt exactly from the softmax inputs).
* ``towers`` (a name or a list, of those the adapter writes), ``layers`` (an
  index or a list; negative counts from the tower's last layer), ``queries``
  (``'generated'``: the new rows of each decode step, ``'action'``: of each
  denoise step, or row indices of every call: ``0``, ``[0, -1]``,
  ``slice(-19, None)``), ``heads`` (``'mean'``/``'max'`` over heads in float32,
  or head indices) and ``dtype`` (``'float16'``, ``'bfloat16'``, ``'float32'``):
  applied as each call returns, before anything is copied off the device, so
  memory follows what was asked for. Rows kept by index are labelled:
  ``AttentionMap.queries`` lays them out and ``AttentionMap.rows`` gives their
  key positions.

Inside, an adapter module is a ``Spec`` (data: towers, attention sources,
layouts) given to ``_lifecycle.register``; ``_libraries`` holds the timm and
transformers sources, ``_keep`` what each captured call keeps (the selection,
fast mode's rebuilds), ``_labels`` turns captured calls into ``AttentionMaps``,
``_undo`` logs every switch so that ``deactivate`` can take it back.
"""
