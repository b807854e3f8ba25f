package daemon

import "os"

const noFollow = 0

func redirectOutput(*os.File) {}
