#!/bin/bash
# $1: --runs for this worker (4: the confirming one; 0: trials only)
cd /work/data27/study
exec env OMP_NUM_THREADS=1 nice -n 10 python3 /work/snap27/run.py tune \
  --data /work/data27/cifar10-jpeg-every10th-train-every5th-test.npz \
  --data-label "CIFAR-10 (JPEG copy), every 10th training image (5000), every 5th test image (2000)" \
  --device cpu --base-width 8 --batch-size 128 --epochs 3 --ema-epochs 1 \
  --space lr=0.0005..0.02:log --space weight_decay=0.02..1:log --space label_smoothing=0..0.3 \
  --trials 24 --runs-per-trial 2 --runs "$1" --json /work/data27/study/jpeg-seed-w8.json
