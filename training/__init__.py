"""Training of the HaN-Seg OAR model with nnU-Net v2 as the engine.

Modules:
    dataset_labels      consecutive nnU-Net label values derived from ``contract.labels`` (by name)
    raw_dataset         writing an nnU-Net v2 raw dataset (channels, label maps, dataset.json, conversion report)
    t1_channel          the T1 channel on the CT grid: real MR registered like at inference, or synthesised
    convert_hanseg      HaN-Seg layout -> nnU-Net raw dataset (CT + registered T1)
    convert_openkbp     shared OpenKBP cases -> nnU-Net raw dataset (CT + synthetic T1, stated)
    cpu_plans           the CPU recipe: a plans file derived from nnU-Net's default plans
    trainers            nnU-Net trainer subclasses (modality dropout, CPU recipe)
    install_trainers    links ``trainers`` into the installed nnunetv2 package so ``-tr NAME`` finds them
    export_model        results folder -> ``weights/`` (no optimiser state) + model card
"""
