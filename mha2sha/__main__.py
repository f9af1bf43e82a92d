import sys

from mha2sha._own_packages import drop_working_directory

# `python -m mha2sha` puts the working directory first on sys.path: a verify.py or fuzz.py there
# must not replace our packages (see mha2sha/_own_packages.py).
drop_working_directory()

from mha2sha.cli import main  # noqa: E402

sys.exit(main())
