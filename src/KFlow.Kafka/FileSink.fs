// The local-file sink for objects assembled from chunks: each object is written to a temporary
// file in the target's directory, flushed to disk, then renamed over the final name (and the
// directory flushed), so a crash never leaves a partial file under the final name.
namespace KFlow.Kafka

open System
open System.IO
open System.Runtime.ExceptionServices
open System.Runtime.InteropServices
open System.Threading.Tasks

/// libc calls for flushing a directory entry (a rename) to disk; .NET has no API for it.
module internal Posix =
    [<DllImport("libc", SetLastError = true)>]
    extern int ``open``(string path, int flags)

    [<DllImport("libc", SetLastError = true)>]
    extern int fsync(int fd)

    [<DllImport("libc", SetLastError = true)>]
    extern int close(int fd)

    /// Flushes a directory's entries (e.g. a rename into it) to disk; a no-op on Windows, where
    /// the rename is made durable by MoveFileEx's own write-through.
    let fsyncDirectory (directory: string) =
        if not (OperatingSystem.IsWindows()) then
            let fd = ``open`` (directory, 0) // O_RDONLY

            if fd < 0 then
                raise (
                    IOException(
                        $"Cannot open directory '{directory}' to flush it (errno {Marshal.GetLastPInvokeError()})."
                    )
                )

            try
                if fsync fd <> 0 then
                    raise (
                        IOException(
                            $"fsync of directory '{directory}' failed (errno {Marshal.GetLastPInvokeError()})."
                        )
                    )
            finally
                close fd |> ignore

/// The settings of a file sink writing values 'a.
[<NoEquality; NoComparison>]
type FileSinkOptions<'a> = {
    /// The final path of a value's file (relative paths are taken from the working directory).
    /// Required. An existing file there is replaced (a replay writes the same object again).
    Path: 'a -> string
    /// Writes a value's contents to the (temporary) stream. Required.
    Write: 'a -> Stream -> Task
    /// Creates the target directory when missing. Default true.
    CreateDirectory: bool
}

/// Writing files atomically, and the file sink built on it.
[<RequireQualifiedAccess>]
module FileSink =
    /// The prefix and suffix of temporary files: ".{name}.{random}.kflow-tmp" next to the target,
    /// never equal to a final name that does not itself start with '.' and end in ".kflow-tmp".
    [<Literal>]
    let TempSuffix = ".kflow-tmp"

    /// Whether a file name is one of the sink's temporary files (left behind by a crash; safe to delete).
    let isTemporary (fileName: string) =
        fileName.StartsWith '.' && fileName.EndsWith TempSuffix

    /// <summary>Writes a file atomically: under the final name there is either the previous file
    /// (or none) or the complete new one, never a partial one.</summary>
    /// <remarks>
    /// 1. Creates a temporary file in the target's directory (same file system, so the rename is atomic).
    /// 2. Runs <paramref name="write"/> on it, then flushes it to disk (fsync).
    /// 3. Renames it over the final name (replacing an existing file) and flushes the directory.
    /// On any failure the temporary file is deleted and the Task faults; the final name is untouched.
    /// </remarks>
    let writeAtomically (path: string) (write: Stream -> Task) : Task = task {
        let full = Path.GetFullPath path
        let directory = Path.GetDirectoryName full |> nonNull
        let name = Path.GetFileName full

        if String.IsNullOrEmpty name then
            raise (ArgumentException($"The file sink needs a file path, not the directory '{path}'.", "path"))

        let temp = Path.Combine(directory, $".{name}.{Guid.NewGuid():N}{TempSuffix}")

        try
            do! task {
                use stream =
                    new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 81920, true)

                do! write stream
                do! stream.FlushAsync()
                stream.Flush true
            }

            File.Move(temp, full, true)
            Posix.fsyncDirectory directory
        with ex ->
            try
                File.Delete temp
            with _ ->
                ()

            ExceptionDispatchInfo.Throw ex
    }

    /// Writes bytes to a file atomically (see writeAtomically).
    let writeAllBytes (path: string) (contents: byte[]) : Task =
        writeAtomically path (fun stream -> stream.WriteAsync(contents, 0, contents.Length))

    /// Options for values written by `write` under `path value`, with every default.
    let options (path: 'a -> string) (write: 'a -> Stream -> Task) : FileSinkOptions<'a> = {
        Path = path
        Write = write
        CreateDirectory = true
    }

    /// The sink's write: each value is written atomically to its own file; the Task completes when
    /// the file is on disk under its final name. Use with `Pipe.sink "files" (FileSink.write options)`.
    let write (options: FileSinkOptions<'a>) : 'a -> Task =
        if isNull (box options.Path) || isNull (box options.Write) then
            raise (
                ArgumentException("FileSinkOptions.Path and Write must be functions, not null.", "options")
            )

        fun value -> task {
            let path = options.Path value

            if options.CreateDirectory then
                Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath path) |> nonNull)
                |> ignore

            do! writeAtomically path (options.Write value)
        }

    /// The write of values whose contents are bytes (e.g. an object assembled with
    /// Pipe.assembleChunks): `FileSink.writeBytes (fun o -> o.Path) (fun o -> o.Bytes)`.
    let writeBytes (path: 'a -> string) (contents: 'a -> byte[]) : 'a -> Task =
        write (
            options path (fun value stream ->
                let bytes = contents value
                stream.WriteAsync(bytes, 0, bytes.Length))
        )
