"""The TensorRT backend (TensorRT 10/11, with pycuda through edge.gpu.cuda): plan.py loads a plan, engine.py is
its Engine, slot.py one camera's slot, frames.py a frame in flight (and CUDA graph mode), build.py builds plans."""
