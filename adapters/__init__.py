"""Model-specific knowledge: which functions and locals hold attention, and how to label them.

>>> from getlocal.adapters import openvla        # or paligemma
>>> openvla.activate()                            # doctest: +SKIP
>>> maps = openvla.collect()                      # doctest: +SKIP
>>> with openvla.capture(model) as maps:          # doctest: +SKIP
...     action = model.predict_action(**inputs)   # maps is filled when the block ends

``openvla``: OpenVLA / Prismatic (timm DINOv2 + SigLIP, Llama-2). ``paligemma``:
PaliGemma and Pi0 / Pi0.5 (SigLIP, Gemma, an action expert). ``smolvla``: LeRobot's
SmolVLA (SmolVLM vision, its VLM and action expert, self- and cross-attention layers). ``tiny``: small
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

Inside, each adapter module (``vit``, ``openvla``, ``paligemma``, ``smolvla``) is one
registration, read from the bottom up:

* ``_spec``: the ``Spec`` an adapter declares, as data: its towers by role
  (vision, language, action expert), the phases and token kinds its labels
  use, its attention sources, how to name a call's tower and lay out its tokens;
* ``sources/``: one module per attention source, each holding its targets (the
  functions and locals to capture), its switch to eager attention and its
  fast-mode rebuild: ``sources.timm`` (timm's ``Attention``),
  ``sources.transformers`` (the attention-interface functions of transformers
  >= 4.48), ``sources.llama_old`` (Llama before 4.48, OpenVLA's pin);
* ``_keep``: what every source shares: ``Keep``, the selection applied to each
  call as it returns (and ``Keep.keep_inputs``, a kernel's softmax inputs kept
  or rebuilt), the lazy values it stores (``Rebuild``, ``Rows``, ``Skipped``)
  and fast mode's refusal;
* ``_labels``: captured calls in, ``AttentionMaps`` out, reading the spec;
* ``_choice``: the mode and selection keywords, checked; ``_undo``: every switch
  logged so that ``deactivate`` can take it back;
* ``_lifecycle``: the ``Adapter`` that ``register(spec)`` returns; its methods
  (``activate``, ``capture``, ``collect``, ``deactivate``, ``is_active``) are
  the adapter module's public functions, bound, not forwarded to.

No bytecode work happens in adapters: they say which functions, which locals,
and how to label; ``getlocal`` does the rest.
"""
