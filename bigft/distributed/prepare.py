"""Build DeepSpeed's just-in-time ops once, at install time: `python -m bigft.distributed.prepare`.

On a CPU-only machine DeepSpeed compiles its shared-memory all-reduce op on first use. Left to
the first job, every rank compiles it at once and the job's first minute goes to gcc; a rank has
also been seen to abort at exit after such a concurrent build. Building it here avoids both.
"""

from __future__ import annotations


def main() -> None:
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if accelerator.device_name() != "cpu":
        print("bigft: DeepSpeed uses its GPU ops; nothing to build")
        return
    builder = accelerator.create_op_builder("ShareMemCommBuilder")
    if builder is None or not builder.is_compatible():
        print("bigft: no shared-memory op for this platform; DeepSpeed falls back to gloo")
        return
    builder.load()
    print("bigft: DeepSpeed's CPU shared-memory op is built")


if __name__ == "__main__":
    main()
