from vncsess_agent.runner import main

raise SystemExit(main())
