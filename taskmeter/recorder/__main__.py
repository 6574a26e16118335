from taskmeter.recorder.loop import main

main()
