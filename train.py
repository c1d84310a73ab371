"""Train one phase of an mmBERT recipe with Composer.

    composer -n 8 train.py recipes/base_pretrain.yaml            # 8 GPUs on this node
    python train.py recipes/smoke/pretrain.yaml trainer.max_duration=20ba   # one process

Everything lives in `mmbert_train.commands.train` and `mmbert_train.train`; this file only makes the Composer launcher's usual form work.
"""

import sys

from mmbert_train.commands.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
