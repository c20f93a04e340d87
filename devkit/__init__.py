"""Development helpers shared by the tests and the benchmarks (never imported by the algorithm itself):
random-weight nnU-Net model folders (:mod:`devkit.make_test_model`) and nnunetv2's own predictor as the reference
(:mod:`devkit.nnunet_reference`)."""
