import sys

from keras_abkd.cli.main import main

sys.exit(main())
