"""The SegFormer: checkpoints, training targets, inference, post-processing, tiling, export."""
