// The ground the throwaway PostgreSQL stands on: where the server binaries are, how to run them
// (as the `postgres` user when this process is root) and how to pick a free loopback port.
module internal KFlow.Testing.PostgresTools

open System
open System.Diagnostics
open System.IO
open System.Net
open System.Net.Sockets
open System.Text

/// The environment variable naming the directory that holds initdb, pg_ctl and postgres.
[<Literal>]
let BinVariable = "KFLOW_PG_BIN"

/// The environment variable holding the connection string of a running server to use instead.
[<Literal>]
let ConnectionVariable = "KFLOW_TEST_PG"

/// The operating-system user that owns and runs the cluster when this process is root.
[<Literal>]
let ServerUser = "postgres"

/// What the throwaway server reads from its surroundings; a parameter so tests can fake it.
[<NoEquality; NoComparison>]
type PostgresEnvironment = {
    /// Reads an environment variable; None when it is unset or blank.
    Variable: string -> string option
    /// Where distribution packages put versioned binaries: `<PackageRoot>/<version>/bin`.
    PackageRoot: string
    /// Whether this process runs as root; the server then runs as the `postgres` user.
    IsRoot: bool
}

/// The real environment of this process.
[<RequireQualifiedAccess>]
module PostgresEnvironment =
    let private variable (name: string) =
        match Environment.GetEnvironmentVariable name with
        | null -> None
        | value when String.IsNullOrWhiteSpace value -> None
        | value -> Some value

    /// This process's variables, /usr/lib/postgresql, and whether the effective user is root.
    let current () = {
        Variable = variable
        PackageRoot = "/usr/lib/postgresql"
        IsRoot = Environment.IsPrivilegedProcess
    }

/// The sentence every "binaries not found" error ends with.
let installHint =
    "Install the PostgreSQL 15 server binaries (apt-get install postgresql-15), or set "
    + BinVariable
    + " to the directory holding initdb and pg_ctl, or set "
    + ConnectionVariable
    + " to the connection string of a running server."

let private requiredPrograms = [ "initdb"; "pg_ctl"; "postgres" ]

let private missingPrograms (directory: string) =
    requiredPrograms
    |> List.filter (fun program -> not (File.Exists(Path.Combine(directory, program))))

/// A directory name such as "15" or "9.6" as a list of numbers, for ordering versions.
let private versionOf (name: string) =
    let parts = name.Split '.' |> Array.map Int32.TryParse

    if parts.Length > 0 && parts |> Array.forall fst then
        Some(parts |> Array.map snd |> List.ofArray)
    else
        None

/// <summary>The directory holding initdb, pg_ctl and postgres.</summary>
/// <remarks>
/// 1. The configured directory (PostgresOptions.BinDirectory) if given, else
/// 2. KFLOW_PG_BIN if set, else
/// 3. the highest `&lt;PackageRoot&gt;/&lt;version&gt;/bin` holding all three programs.
/// Raises InvalidOperationException with the install hint when none fits.
/// </remarks>
let locateBinaries (env: PostgresEnvironment) (configured: string option) : string =
    let named =
        match configured with
        | Some directory -> Some(directory, "PostgresOptions.BinDirectory")
        | None -> env.Variable BinVariable |> Option.map (fun directory -> directory, BinVariable)

    match named with
    | Some(directory, source) ->
        match missingPrograms directory with
        | [] -> Path.GetFullPath directory
        | missing ->
            let missing = String.Join(", ", missing)

            invalidOp
                $"PostgreSQL server binaries not found: {source} is '{directory}', which lacks {missing}. \
                  Point it at the bin directory of a PostgreSQL server (e.g. /usr/lib/postgresql/15/bin). \
                  {installHint}"
    | None ->
        let candidates =
            if Directory.Exists env.PackageRoot then
                Directory.GetDirectories env.PackageRoot
                |> Array.choose (fun dir ->
                    versionOf (Path.GetFileName dir)
                    |> Option.map (fun version -> version, Path.Combine(dir, "bin")))
                |> Array.sortByDescending fst
                |> List.ofArray
            else
                []

        match candidates |> List.tryFind (fun (_, bin) -> List.isEmpty (missingPrograms bin)) with
        | Some(_, bin) -> bin
        | None ->
            invalidOp
                $"PostgreSQL server binaries not found: no {env.PackageRoot}/<version>/bin holds initdb, \
                  pg_ctl and postgres, and {BinVariable} is not set. {installHint}"

/// How a program ended: its exit code and its standard output and error, interleaved.
type ProcessResult = { ExitCode: int; Output: string }

/// <summary>Runs a program to its end and captures its output.</summary>
/// <remarks>Raises TimeoutException (after killing it) when it outlives the timeout.</remarks>
let run (workingDirectory: string) (timeout: TimeSpan) (program: string) (arguments: string list) =
    let info =
        ProcessStartInfo(
            program,
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = workingDirectory
        )

    for argument in arguments do
        info.ArgumentList.Add argument

    let output = StringBuilder()

    let append (line: string) =
        lock output (fun () -> output.AppendLine line |> ignore)

    use proc = new Process(StartInfo = info)

    proc.OutputDataReceived.Add(fun e ->
        if not (isNull e.Data) then
            append e.Data)

    proc.ErrorDataReceived.Add(fun e ->
        if not (isNull e.Data) then
            append e.Data)

    proc.Start() |> ignore
    proc.BeginOutputReadLine()
    proc.BeginErrorReadLine()

    if not (proc.WaitForExit timeout) then
        (try
            proc.Kill true
         with _ ->
             ())

        let command = String.Join(" ", program :: arguments)
        raise (TimeoutException $"'{command}' did not finish within {timeout}. Output so far:\n{output}")

    proc.WaitForExit() // drains the asynchronous readers

    {
        ExitCode = proc.ExitCode
        Output = lock output (fun () -> output.ToString())
    }

let private runuserPath () =
    [ "/usr/sbin/runuser"; "/sbin/runuser"; "/usr/bin/runuser"; "/bin/runuser" ]
    |> List.tryFind File.Exists
    |> Option.defaultWith (fun () ->
        invalidOp
            "This process runs as root, so the PostgreSQL server must run as the 'postgres' user, \
             but runuser (util-linux) was not found. Run the tests as an ordinary user, or install util-linux.")

/// Runs a server program as the user that owns the cluster: ourselves, or `postgres` via runuser when root.
let runAsServerUser (env: PostgresEnvironment) workingDirectory timeout program (arguments: string list) =
    if env.IsRoot then
        run workingDirectory timeout (runuserPath ()) ([ "-u"; ServerUser; "--"; program ] @ arguments)
    else
        run workingDirectory timeout program arguments

/// Gives a directory to the `postgres` user (only called when root), so initdb and the server can use it.
let giveToServerUser (directory: string) =
    let result =
        run directory (TimeSpan.FromSeconds 30.0) "chown" [ ServerUser + ":"; directory ]

    if result.ExitCode <> 0 then
        invalidOp
            $"Could not give '{directory}' to the '{ServerUser}' user (chown exited with {result.ExitCode}): \
              {result.Output.Trim()} The '{ServerUser}' user is created by the postgresql-15 package."

/// A loopback TCP port that is free now (the kernel picks it; another process may take it later).
let freeLoopbackPort () =
    let listener = new TcpListener(IPAddress.Loopback, 0)
    listener.Start()

    try
        (listener.LocalEndpoint :?> IPEndPoint).Port
    finally
        listener.Stop()
