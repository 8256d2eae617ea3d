// The one entry point of the build: `dotnet fsi build.fsx <target> [args]`.
// A plain F# script (no FAKE): each target is a function, prerequisites are ordinary calls, and
// every target first restores the tools and the packages, so each command works on a fresh clone.

open System
open System.Diagnostics
open System.IO

let root = __SOURCE_DIRECTORY__
let solution = Path.Combine(root, "KFlow.Functional.sln")
let artifacts = Path.Combine(root, "artifacts")
let configuration = "Release"

// ---------------------------------------------------------------------------------------------
// Processes

/// Runs a program with the console inherited; returns its exit code.
let run (workDir: string) (program: string) (args: string list) =
    let psi =
        ProcessStartInfo(program, WorkingDirectory = workDir, UseShellExecute = false)

    args |> List.iter psi.ArgumentList.Add
    use p = Process.Start psi
    p.WaitForExit()
    p.ExitCode

/// Runs a program and fails the build, naming the command, when it exits non-zero.
let exec (program: string) (args: string list) =
    let code = run root program args

    if code <> 0 then
        eprintfn "\nbuild.fsx: '%s %s' failed with exit code %d." program (String.Join(" ", args)) code
        exit code

/// Runs a program and returns what it printed on stdout.
let capture (program: string) (args: string list) =
    let psi =
        ProcessStartInfo(
            program,
            WorkingDirectory = root,
            UseShellExecute = false,
            RedirectStandardOutput = true
        )

    args |> List.iter psi.ArgumentList.Add
    use p = Process.Start psi
    let out = p.StandardOutput.ReadToEnd()
    p.WaitForExit()
    out

// ---------------------------------------------------------------------------------------------
// Set-up shared by every target

/// paket.dependencies reads its feed from KFLOW_NUGET_SOURCE, so no registry host is committed.
/// When the variable is unset, take the first enabled source of this machine's NuGet configuration.
let ensureFeed () =
    match Environment.GetEnvironmentVariable "KFLOW_NUGET_SOURCE" with
    | null
    | "" ->
        let enabled =
            capture "dotnet" [ "nuget"; "list"; "source"; "--format"; "short" ]
            |> fun s -> s.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            |> Array.map (fun l -> l.Trim().Split(' ', 2, StringSplitOptions.RemoveEmptyEntries))
            |> Array.tryPick (function
                | [| flags; url |] when flags.StartsWith "E" -> Some url
                | _ -> None)

        match enabled with
        | Some url -> Environment.SetEnvironmentVariable("KFLOW_NUGET_SOURCE", url)
        | None ->
            eprintfn "build.fsx: no enabled NuGet source found by 'dotnet nuget list source'."
            eprintfn "Add one (dotnet nuget add source ...) or set KFLOW_NUGET_SOURCE to a feed URL."
            exit 1
    | _ -> ()

let mutable private restored = false

/// Restores the dotnet tools (paket, fantomas) and the packages, once per run.
let restore () =
    if not restored then
        Environment.SetEnvironmentVariable("DOTNET_CLI_TELEMETRY_OPTOUT", "1")
        Environment.SetEnvironmentVariable("DOTNET_NOLOGO", "1")
        ensureFeed ()
        exec "dotnet" [ "tool"; "restore" ]
        // `install` (not `restore`): paket.lock is not committed, so resolve from the exact pins.
        exec "dotnet" [ "paket"; "install" ]
        restored <- true

// ---------------------------------------------------------------------------------------------
// Targets

/// Builds the whole solution in Release; warnings are errors (Directory.Build.props).
let build () =
    restore ()
    exec "dotnet" [ "build"; solution; "-c"; configuration; "--nologo"; "-v"; "minimal" ]

/// The test projects: every project under tests/ (each is an Expecto console app).
let testProjects () =
    Directory.GetDirectories(Path.Combine(root, "tests"))
    |> Array.filter (fun d ->
        let name = Path.GetFileName d

        File.Exists(Path.Combine(d, name + ".fsproj"))
        || File.Exists(Path.Combine(d, name + ".csproj")))
    |> Array.sort

type Counts = {
    Passed: int
    Failed: int
    Skipped: int
}

/// Reads Expecto's --nunit-summary file: total, failures, errors, ignored/not-run.
let readSummary (file: string) =
    // Only the root element's counts are read: Expecto writes failure messages verbatim, colour
    // codes (0x1B) included, which an XML parser refuses further down the file.
    use reader = Xml.XmlReader.Create file
    reader.MoveToContent() |> ignore

    let attr (name: string) =
        match reader.GetAttribute name with
        | null -> 0
        | value when String.IsNullOrWhiteSpace value -> 0
        | value -> int value

    let failed = attr "failures" + attr "errors"
    let skipped = attr "ignored" + attr "not-run" + attr "skipped"

    {
        Passed = attr "total" - failed - skipped
        Failed = failed
        Skipped = skipped
    }

/// Runs every test project and prints one final line `N passed, N failed`.
let test (args: string list) =
    build ()
    let resultsDir = Path.Combine(artifacts, "test-results")
    Directory.CreateDirectory resultsDir |> ignore

    let counts =
        testProjects ()
        |> Array.map (fun dir ->
            let name = Path.GetFileName dir
            let dll = Path.Combine(dir, "bin", configuration, "net10.0", name + ".dll")
            let summary = Path.Combine(resultsDir, name + ".xml")

            if File.Exists summary then
                File.Delete summary

            printfn "\n=== %s" name
            let code = run root "dotnet" ([ dll; "--nunit-summary"; summary ] @ args)

            if File.Exists summary then
                let c =
                    try
                        readSummary summary
                    with e ->
                        eprintfn "build.fsx: cannot read %s (%s); counted as one failure." summary e.Message
                        { Passed = 0; Failed = 1; Skipped = 0 }

                if c.Passed + c.Failed + c.Skipped = 0 then
                    eprintfn "build.fsx: %s ran no test; counted as one failure." name
                    { c with Failed = 1 }
                // A non-zero exit with no failed test (e.g. a crash after the run) still fails.
                elif code <> 0 && c.Failed = 0 then
                    { c with Failed = 1 }
                else
                    c
            else
                eprintfn
                    "build.fsx: %s exited with %d and wrote no summary; counted as one failure."
                    name
                    code

                { Passed = 0; Failed = 1; Skipped = 0 })
        |> Array.fold
            (fun a c -> {
                Passed = a.Passed + c.Passed
                Failed = a.Failed + c.Failed
                Skipped = a.Skipped + c.Skipped
            })
            { Passed = 0; Failed = 0; Skipped = 0 }
    // Expecto leaves a colour-reset code on the next line: start ours on a fresh one.
    if counts.Skipped > 0 then
        printfn "\n%d passed, %d failed, %d skipped" counts.Passed counts.Failed counts.Skipped
    else
        printfn "\n%d passed, %d failed" counts.Passed counts.Failed

    if counts.Failed > 0 then
        exit 1

/// Runs the embedded Kafka cluster for local development until Ctrl+C (args go to the program,
/// e.g. `--brokers 3 --topic orders:8`).
let devCluster (args: string list) =
    build ()

    let dll =
        Path.Combine(root, "src", "KFlow.DevCluster", "bin", configuration, "net10.0", "KFlow.DevCluster.dll")

    exit (run root "dotnet" (dll :: args))

/// Runs the benchmarks (args go to the program, e.g. `--only ledger`); results go to
/// artifacts/bench-results.json.
let bench (args: string list) =
    build ()

    let dll =
        Path.Combine(root, "bench", "KFlow.Bench", "bin", configuration, "net10.0", "KFlow.Bench.dll")

    exec "dotnet" (dll :: args)

/// Runs the demo service (src-csharp/KFlow.Demo): the example workflow on an embedded Kafka cluster and
/// a throwaway PostgreSQL unless configured otherwise; args go to the program (`--events N`, `--keys K`,
/// `--KFlow:Kafka:BootstrapServers=host:9092`, ...). Exits with the demo's code (non-zero if data was lost).
let demo (args: string list) =
    build ()

    let dll =
        Path.Combine(root, "src-csharp", "KFlow.Demo", "bin", configuration, "net10.0", "KFlow.Demo.dll")

    exit (run root "dotnet" (dll :: args))

/// Rewrites tests/KFlow.Hosting.Tests/PublicApi.txt from the built facade: runs the surface test with
/// KFLOW_WRITE_PUBLIC_API=1 (which writes the file before comparing). Review the diff, then commit it.
let publicApi () =
    build ()

    let dll =
        Path.Combine(
            root,
            "tests",
            "KFlow.Hosting.Tests",
            "bin",
            configuration,
            "net10.0",
            "KFlow.Hosting.Tests.dll"
        )

    Environment.SetEnvironmentVariable("KFLOW_WRITE_PUBLIC_API", "1")
    exec "dotnet" [ dll; "--filter"; "KFlow.Hosting.PublicSurface" ]

    printfn
        "\nbuild.fsx: rewrote tests/KFlow.Hosting.Tests/PublicApi.txt; review it (git diff) and commit it."

let private formatted = [ "src"; "tests"; "bench"; "build.fsx" ]

/// Formats the F# sources with the pinned fantomas.
let format () =
    restore ()
    exec "dotnet" ([ "fantomas" ] @ formatted)

/// Fails when an F# source is not formatted as fantomas would.
let formatCheck () =
    restore ()
    exec "dotnet" ([ "fantomas"; "--check" ] @ formatted)

let targets: (string * string * (string list -> unit)) list = [
    "demo", "build, run the demo service: embedded Kafka + throwaway PostgreSQL, check (--events N)", demo
    "build", "restore tools and packages, build the solution (Release)", (fun _ -> build ())
    "test", "build, run every test project, print 'N passed, N failed'", test
    "dev-cluster",
    "run an embedded Kafka cluster until Ctrl+C (--brokers N --topic name:partitions)",
    devCluster
    "bench", "run the benchmarks, write artifacts/bench-results.json (--only NAME, --messages N)", bench
    "public-api", "build, rewrite the facade's PublicApi.txt from its public surface", (fun _ -> publicApi ())
    "format", "format the F# sources with fantomas", (fun _ -> format ())
    "format-check", "fail if an F# source is not formatted", (fun _ -> formatCheck ())
]

let usage () =
    eprintfn "usage: dotnet fsi build.fsx <target> [args]\n\ntargets:"

    for name, description, _ in targets do
        eprintfn "  %-13s %s" name description

match fsi.CommandLineArgs |> Array.toList |> List.tail with
| target :: args ->
    match targets |> List.tryFind (fun (name, _, _) -> name = target) with
    | Some(_, _, f) -> f args
    | None ->
        eprintfn "build.fsx: unknown target '%s'.\n" target
        usage ()
        exit 2
| [] ->
    usage ()
    exit 2
