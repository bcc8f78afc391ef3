# ADE20K (SceneParsing, 150 classes) in its ADEChallengeData2016 layout: mmseg's own dataset
# config from the installed package (random resize of the (2048, 512) scale by 0.5-2.0,
# 512x512 crop, flip, photometric distortion; test at the (2048, 512) scale; label 0 "other"
# becomes 255, ignored; the 6-ratio flip TTA pipeline), with one difference:
_base_ = 'mmseg::_base_/datasets/ade20k.py'

# per GPU: 8 GPUs x 2 = the total batch of 16 the schedule assumes (mmseg's file has 4 per GPU)
train_dataloader = dict(batch_size=2)
