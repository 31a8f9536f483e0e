"""Everything that imports torch: training, generation, scoring. Runs only in subprocesses."""

import logging

# Two import-time notices that torchao 0.18 causes under torch 2.14 and diffusers 0.42, in every engine
# process and so in every train.log: library-internal compatibility notes a user can do nothing about.
# Set before any engine module imports torch or diffusers; other warnings of these libraries still show.
for _name in ("torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    logging.getLogger(_name).setLevel(logging.ERROR)
