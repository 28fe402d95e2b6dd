"""Kept so `python -m data_pipeline.scenes` still works; the code is data_pipeline/synthetic/.

    python -m data_pipeline.scenes --num 12 --seed 0 --size 64 --sheet /tmp/scenes.png
"""

from data_pipeline.synthetic.scenes import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
