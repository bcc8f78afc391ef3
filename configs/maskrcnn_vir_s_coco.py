# Mask R-CNN + ViR-S/16 (bidirectional 2D retention) + simple feature pyramid, COCO 2017, 1x.
#
#   python tools/train.py configs/maskrcnn_vir_s_coco.py                  # 1 GPU (batch 2)
#   bash tools/dist_train.sh configs/maskrcnn_vir_s_coco.py 8             # total batch 16
#
# Total batch 16 = 8 GPUs x 2 images; lr 1e-4 is for that batch (--auto-scale-lr rescales it
# linearly for another one). The backbone starts from pretrained/vir_small_patch16_224.pth:
# no ImageNet ViR weights exist anywhere, so make that file from timm DeiT-S/ViT-S weights with
#   python tools/model_converters/convert_checkpoint.py timm/deit_small_patch16_224.fb_in1k \
#       pretrained/vir_small_patch16_224.pth --arch small
# (a warm start: the attention weights become retention weights), or train from scratch with
#   --cfg-options model.backbone.init_cfg=None
_base_ = [
    '_base_/models/mask_rcnn_vir.py',
    '_base_/datasets/coco_instance.py',
    '_base_/schedules/det_schedule_1x.py',
    '_base_/default_runtime_det.py',
]
