"""Synthetic grounded-reasoning scenes, split by reasoning category.

    drawing.py     Pen, colours and the Family record every family uses
    spatial.py     S families      attribute.py   A families      human.py   H families
    temporal.py    T families      physical.py    P families
    scenes.py      the family registry, scene sampling, captions, benchmark sets, the CLI

    python -m data_pipeline.synthetic.scenes --num 12 --seed 0 --size 64 --sheet /tmp/s.png
"""
