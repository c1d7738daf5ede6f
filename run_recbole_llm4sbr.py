"""Train and test a model on a session dataset: ``python run_recbole_llm4sbr.py --model=LLM4SBR_SRGNN``."""
import sys

from recbole_llm4sbr.cli import main

if __name__ == "__main__":
    sys.exit(main())
