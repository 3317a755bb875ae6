"""Object detection's building blocks, each equal to torchvision's (tests/test_detection_*):

  boxes        IoU, GIoU, clipping, RetinaNet's and FCOS's box codings
  anchors      the pyramid levels' anchors (torchvision's AnchorGenerator), numpy, static
  assign       per-anchor ground-truth matches: FCOS's rules and RetinaNet's IoU matcher
  losses       focal, GIoU and centerness losses; fcos_loss and retinanet_loss
  nms          class-aware NMS with a fixed output size, for jit
  postprocess  outputs -> (boxes, scores, classes, num_detections), fixed size, on device
  coco_eval    COCO mAP by pycocotools from arrays, and the COCO results JSON
  torchvision_weights  torchvision's FCOS / RetinaNet state dicts -> our parameter paths

Boxes are (x1, y1, x2, y2) in pixels of the network's (padded) input throughout; ground
truth comes padded to a fixed number of boxes with a mask. The networks are in
vision_jax/models/detection.py.
"""
