"""Featurisation: image files -> tower outputs or embeddings, at the hardware's pace.

- `allocator`: glibc malloc settings that stop the kernel from serving every large tensor with
  fresh memory maps (half of a bare CPU loop's time before);
- `runtime`: how a frozen tower runs (`torch` eager or `onnx` = ONNX Runtime), chosen by name or
  automatically (the faster of the ones whose outputs match fp32 PyTorch);
- `engines`: the embedding-engine seam. An engine runs an `ImageJob` (decode, preprocess,
  forward) over shards of images and hands each finished shard to a sink that writes it
  atomically, so a killed job resumes at the first unfinished shard. `local` runs in this
  process with decoding overlapped with the forward pass; `ray` runs on Ray Data (decode tasks,
  an actor pool of models), on a local Ray or a cluster.
"""
