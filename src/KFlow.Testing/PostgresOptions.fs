// How a throwaway PostgreSQL server is made: an immutable record of options, each with its default,
// checked once (PostgresOptions.validate) before anything touches the disk.
namespace KFlow.Testing

open System
open System.IO
open System.Text.RegularExpressions

/// <summary>How a throwaway PostgreSQL server is made.</summary>
/// <remarks>
/// Start from <c>PostgresOptions.defaults</c> and change fields with <c>{ PostgresOptions.defaults with … }</c>
/// (F#) or the <c>WithX</c> methods (C#). Checked when the server starts.
/// </remarks>
type PostgresOptions = {
    /// Directory holding initdb, pg_ctl and postgres. Default None: the KFLOW_PG_BIN variable if
    /// set, else the highest version under /usr/lib/postgresql/&lt;version&gt;/bin.
    BinDirectory: string option
    /// Loopback TCP port the server listens on. Default 0: a free port is picked (and picked
    /// again if another process takes it before the server binds it).
    Port: int
    /// How long one start (initdb, pg_ctl start, first connection), stop or restart may take
    /// before it fails. Default 60 seconds.
    Timeout: TimeSpan
    /// Extra postgresql.conf settings as (name, value), applied after the test defaults
    /// (fsync, synchronous_commit and full_page_writes off). Default [] (none).
    Settings: (string * string) list
    /// Directory in which the server's temp directory is created. Default None: the system temp
    /// directory (TMPDIR, else /tmp). When running as root the `postgres` user must be able to
    /// reach it.
    TempRoot: string option
    /// Whether a connection string in KFLOW_TEST_PG replaces the throwaway server. Default true;
    /// set false where a test needs Stop/Restart or a fresh cluster.
    AllowExternalServer: bool
} with

    /// The defaults: binaries found automatically, a free port, 60 seconds per start/stop, no extra
    /// settings, the system temp directory, KFLOW_TEST_PG honoured. F#: PostgresOptions.defaults.
    static member Default = {
        BinDirectory = None
        Port = 0
        Timeout = TimeSpan.FromSeconds 60.0
        Settings = []
        TempRoot = None
        AllowExternalServer = true
    }

    /// The options with the given port (0 picks a free one).
    member options.WithPort(port: int) = { options with Port = port }

    /// The options with the given timeout for each start, stop or restart.
    member options.WithTimeout(timeout: TimeSpan) = { options with Timeout = timeout }

    /// The options with one more postgresql.conf setting.
    member options.WithSetting(name: string, value: string) = {
        options with
            Settings = options.Settings @ [ name, value ]
    }

    /// The options with the directory holding initdb, pg_ctl and postgres.
    member options.WithBinDirectory(directory: string) = {
        options with
            BinDirectory = Some directory
    }

    /// The options with the directory in which the server's temp directory is created.
    member options.WithTempRoot(directory: string) = {
        options with
            TempRoot = Some directory
    }

    /// The options with KFLOW_TEST_PG honoured (true) or ignored (false).
    member options.WithAllowExternalServer(allow: bool) = {
        options with
            AllowExternalServer = allow
    }

/// Functions over PostgresOptions.
[<RequireQualifiedAccess>]
module PostgresOptions =
    /// The defaults (the same as PostgresOptions.Default): binaries found automatically, a free port,
    /// 60 seconds per start/stop, no extra settings, the system temp directory, KFLOW_TEST_PG honoured.
    let defaults = PostgresOptions.Default

    /// Settings the server manages itself; each maps to the option to use instead.
    let private managedSettings =
        Map [
            "port", "set PostgresOptions.Port instead"
            "listen_addresses", "the throwaway server listens on 127.0.0.1 only"
            "unix_socket_directories", "the throwaway server uses TCP on loopback only"
        ]

    let private settingName =
        Regex("^[A-Za-z_][A-Za-z0-9_.]*$", RegexOptions.CultureInvariant)

    let private fail (message: string) =
        raise (ArgumentException(message, "options"))

    /// <summary>The options, unchanged, if they are valid.</summary>
    /// <remarks>Raises ArgumentException with a sentence saying what to set otherwise.</remarks>
    let validate (options: PostgresOptions) : PostgresOptions =
        if options.Port < 0 || options.Port > 65535 then
            fail
                $"PostgresOptions.Port must be between 0 and 65535 (0 picks a free port); it was {options.Port}."

        if options.Timeout <= TimeSpan.Zero then
            fail
                $"PostgresOptions.Timeout must be positive (the default is 60 seconds); it was {options.Timeout}."

        match options.BinDirectory with
        | Some directory when String.IsNullOrWhiteSpace directory ->
            fail
                "PostgresOptions.BinDirectory must not be blank; leave it None to use KFLOW_PG_BIN or \
                 /usr/lib/postgresql/<version>/bin."
        | _ -> ()

        match options.TempRoot with
        | Some directory when String.IsNullOrWhiteSpace directory ->
            fail "PostgresOptions.TempRoot must not be blank; leave it None to use the system temp directory."
        | Some directory when not (Directory.Exists directory) ->
            fail
                $"PostgresOptions.TempRoot is '{directory}', which does not exist; create it or leave it None."
        | _ -> ()

        for name, value in options.Settings do
            if isNull name || not (settingName.IsMatch name) then
                fail
                    $"PostgresOptions.Settings: '{name}' is not a PostgreSQL setting name (letters, digits, '_' and '.')."

            match managedSettings.TryFind(name.ToLowerInvariant()) with
            | Some instead -> fail $"PostgresOptions.Settings may not set '{name}': {instead}."
            | None -> ()

            if isNull value || value.IndexOfAny [| '\n'; '\r'; '\000' |] >= 0 then
                fail $"PostgresOptions.Settings: the value of '{name}' must be one line of text."

        options
